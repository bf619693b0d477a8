"""``python -m probekit.samples ROOT``: rebuild the bundled CIFAR-10 sample from ``ROOT/test``."""

import sys

from probekit.samples import build_cifar10_sample

print(build_cifar10_sample(sys.argv[1]))
