"""The shared core: wire protocol, transport, runtime, errors, security, skill format.

Roles (proxy, servers, future distiller and console) and the SDK build on
this; it imports none of them.
"""
