# Sourced by the device scripts: the lent GPU machine has PyTorch but no network, so newer
# transformers/peft/datasets travel as wheels (.whl/) and regiontune runs from the tree.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
# the installed layout: core/ is the regiontune package, adapters/ is regiontune.adapters
rm -rf /tmp/pkg && mkdir -p /tmp/pkg
cp -r "$PWD/core" /tmp/pkg/regiontune
ln -sfn "$PWD/adapters" /tmp/pkg/regiontune/adapters
export PYTHONPATH=/tmp/pkg:/tmp/site:$PWD HF_DATASETS_CACHE=/tmp/hfcache
