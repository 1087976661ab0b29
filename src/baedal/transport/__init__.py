"""Transports other than TCP that any protocol listener can use.

``unix``: a listener on a Unix domain socket (a path or a Linux abstract name) for any
``asyncio.Protocol`` factory.  ``inproc``: brokers registered by name in this process,
reached with no socket at all (messages handed over as core ``Message`` objects).
"""
