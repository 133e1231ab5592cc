"""Spark plumbing: session factory, scoring UDFs, split policies."""
