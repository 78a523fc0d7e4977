"""Instant replies while tools run: classify a message, then pick a varied template.

Every word the code matches and every text it sends lives in `locales/<language>.json`,
so a language is added by adding a file.
"""
