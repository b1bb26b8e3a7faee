"""`edgetl explain`: its options (`config`), the analysis (`report`: class-activation maps, weight change,
confusions, INT8 flips) and the HTML page (`page`). Importing the package imports nothing."""
