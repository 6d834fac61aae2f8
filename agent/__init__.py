"""Agent: drives the seed Software Delivery flow (steps 1-9) on top of mcast."""
