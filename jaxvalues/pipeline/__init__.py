"""The end-to-end experiment: `jaxvalues run --config configs/experiments/NAME.yaml`."""
