#!/usr/bin/env bash
# Does the best explainer depend on the architecture? The README's "Across architectures" table in
# one command: the tiny Cnn14 and the small AST trained from scratch on the same clips with the same
# recipe (experiment=architectures), every explainer, two seeds, sanity checks on, two jobs at a time
# (hydra/launcher=joblib; the slowest explainers first, both models' trainings at once). DeepSHAP
# runs on Cnn14 only, in a sweep of its own (SWEEP_deepshap): the AST refuses it in one line
# (attention and LayerNorm have no DeepLIFT rule); its gradient form, shap_gradient, runs on both.
# Then the table, and the report (SWEEP/report), from both sweeps.
#   bash scripts/architectures.sh [SWEEP_FOLDER] [TABLE]
set -euo pipefail
sweep=${1:-outputs/multirun/architectures}
table=${2:-docs/results/architectures.md}
launcher=(hydra/launcher=joblib hydra.launcher.n_jobs=2)
python -m audiointerp.run -m experiment=architectures "${launcher[@]}" "hydra.sweep.dir=$sweep" \
    explainer=lmac,lime,occlusion,shap_gradient,integrated_gradients,smoothgrad,gradcam,saliency,random,oracle \
    seed=0,1 model=cnn14,ast
python -m audiointerp.run -m experiment=architectures "${launcher[@]}" "hydra.sweep.dir=${sweep}_deepshap" \
    explainer=shap seed=0,1 model=cnn14
python scripts/architecture_table.py "$sweep" "${sweep}_deepshap" --out "$table"
python -m audiointerp.report "$sweep" "${sweep}_deepshap"
