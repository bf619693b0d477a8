"""Results stores: the DataTree-in-zarr writer and reader (:mod:`probekit.store.results`), locks, manifests with
checksums, remote locations, the schema's coordinate helpers and provenance attrs."""
