"""The remote agent: stdlib-only code the client ships to the server over SSH.

Every module here runs on the server's own ``python3`` (3.8 or newer), so it may
import only the standard library and its sibling modules, always relatively.
The client never installs it: it is sent on each call together with the request.
"""
