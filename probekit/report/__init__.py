"""HTML reports of results stores (:mod:`probekit.report.html`) and the figure helpers plots use
(:mod:`probekit.report.plotting`)."""
