"""Networks: tensors in, tensors out; they know no noise schedule.

`NETWORKS` names the networks that parts build from a nested config mapping (e.g. a method's
`unet: {base_channels: 16, channel_mults: [1, 2]}`), so those settings are validated against the
network's own signature (unknown key, wrong type: a UserError naming the valid options).
"""

from diffrep.registry import Registry

NETWORKS: Registry = Registry("network")
