"""The HPO service: ask / report / tell over HTTP, per-study tokens, live web pages."""
