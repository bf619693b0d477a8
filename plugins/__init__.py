"""Analyses bundled with probekit, registered through the ``probekit`` entry-point group."""
