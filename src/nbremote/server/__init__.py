"""`nbremote server …`: run on the server by its owner (check, harden, firewall, expose, invite)."""
