"""The auditor's side: a session's raw evidence, its summary, its replay, evidence bundles.

evidence.py   the session's sealed records, cut from the delivered objects
summary.py    what `tapegate show` says: header, identity, verdict, totals
timeline.py   events and (with the auditor key) decrypted frames, in time order
postgres.py   result rows recovered from a PostgreSQL session's server bytes (sans-IO)
render.py     replay as text, JSON lines, asciicast v2, HAR 1.2
bundle.py     `tapegate export`: a zip a third party verifies offline
"""
