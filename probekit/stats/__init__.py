"""Evidence for a measured number: permutation nulls, bootstrap intervals, multiple-comparison corrections, and
the schema convention that stores them beside the statistic (``S_p``, ``S_p_adjusted``, ``S_null``, ``S_ci``).

Pure numpy functions of arrays the run already keeps; plugins reach them through :mod:`probekit.api`.
"""
