"""Signed policy from the centre: bundles, the policy in force, where bundles come from."""
