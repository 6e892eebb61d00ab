"""The engine as a process: the wire protocol, the client that starts and drives it, the server loop.

Standard library and numpy only (the server imports the pipeline, and so torch, only
when a job runs): Blender loads the protocol and the client.  They change together,
since a frame or message added on one side is read on the other.
"""
