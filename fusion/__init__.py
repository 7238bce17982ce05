"""fusionpipe stage 2: fusion model, baselines and the comparison report, from a feature store."""
