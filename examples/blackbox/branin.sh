#!/usr/bin/env bash
# A black-box objective in shell + awk: the Branin function of x and y, "trained" for
# $3 steps (the trial's budget). Each step prints a JSON report line, which lets the
# scheduler stop a weak trial early; the last JSON line on stdout is the result.
#   bash branin.sh X Y [STEPS]
set -euo pipefail
x=${1:?x}; y=${2:?y}; steps=${3:-9}
if [ "$steps" = "None" ]; then steps=9; fi
awk -v x="$x" -v y="$y" -v steps="$steps" 'BEGIN {
    pi = atan2(0, -1)
    a = 1; b = 5.1 / (4 * pi * pi); c = 5 / pi; r = 6; s = 10; t = 1 / (8 * pi)
    f = a * (y - b * x * x + c * x - r) ^ 2 + s * (1 - t) * cos(x) + s
    for (step = 1; step <= steps; step++) {
        # the estimate gets closer to f as the "training" goes on
        printf "{\"step\": %d, \"loss\": %.6f}\n", step, f + 20.0 / step
        fflush()
    }
    printf "{\"loss\": %.6f, \"steps\": %d}\n", f, steps
}'
