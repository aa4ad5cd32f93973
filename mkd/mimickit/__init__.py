"""The MimicKit adapter's pure parts: read what MimicKit prints and writes, derive its agent configs.

Nothing here starts a process; everything is built against the real outputs described in
the team's MimicKit notes (console tables, log.txt, test-mode results, out_dir artifacts).
"""
