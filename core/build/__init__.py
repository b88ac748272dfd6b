"""Builds: Dockerfiles and their contexts, turned into images one step at a time.

:mod:`.parser` and :mod:`.instructions` read a Dockerfile (:func:`.instructions.parse`),
:mod:`.words` and :mod:`.variables` expand its words step by step, :mod:`.dockerignore`
says which files of the context a build may see.
"""
