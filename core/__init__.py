"""artchain's core: plugin discovery, chains, the engine, image I/O, config and weights.

Nothing here knows any particular model; processors come from plugins (see `hookspecs`).
"""
