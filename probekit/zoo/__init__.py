"""The bundled model zoo: model families, their training recipes, the experiments that train their own models,
and the committed weights. It plugs into probekit like any plugin (``probekit.zoo.plugin`` through the
``probekit`` entry-point group, ``probekit.zoo.commands`` through ``probekit.commands``); the core never imports it.
"""
