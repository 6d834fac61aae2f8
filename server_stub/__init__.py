"""Notification Server and package server stub (HTTP), with a durable status event queue."""
