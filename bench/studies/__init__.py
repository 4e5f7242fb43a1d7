"""One-off studies beside `make bench`, each answering one question; run by hand.

python -m bench.studies.NAME
"""
