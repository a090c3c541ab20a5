"""Diffusion core: schedules (gamma = -logSNR), the forward process, objectives, samplers.

Import the submodules directly (`from diffrep.diffusion.schedules import SCHEDULES`); this
package file stays import-light.
"""
