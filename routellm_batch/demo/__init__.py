"""The embedded demo: a config and a small prompt table shipped with the package."""
