#!/usr/bin/env bash
# Fetch the wheels that the GPU image lacks into .whl/ (run here, where PyPI is reachable; carry .whl
# to the GPU machine, where benchmarks/gpu/run.sh installs them into /tmp/site first). The image has
# torch, transformers, accelerate, peft, tokenizers, safetensors, numpy, pyyaml, tqdm, matplotlib,
# pyarrow, xxhash; okd also needs pydantic (and its parts), datasets (+dill, multiprocess), gguf,
# rouge_score (+nltk, absl-py is there), and the benchmark's TRL rows need trl.
# Python 3.12, x86-64 manylinux (the image's); versions as tested with okd here (trl as on the H100).
set -eu
cd "$(dirname "$0")/../.."
DIR=${WHL_DIR:-.whl}
mkdir -p "$DIR"
if [ "$DIR" = .whl ] && ! grep -qx "/.whl/" .git/info/exclude 2>/dev/null; then
  echo "/.whl/" >> .git/info/exclude  # never committed
fi
PKGS=${WHEELS:-"pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 rouge_score==0.1.2 nltk==3.10.4 trl==1.16.0"}
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
for p in $PKGS; do
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT \
    -d "$DIR" "$p" 2> /dev/null || python3 -m pip download -q --no-deps --no-binary=:none: -d "$DIR" "$p"
done
# an sdist (rouge_score has none as a wheel) becomes a wheel here; it is pure Python
for s in "$DIR"/*.tar.gz; do
  [ -e "$s" ] || continue
  python3 -m pip wheel -q --no-deps -w "$DIR" "$s" && rm "$s"
done
ls -la "$DIR"; du -sh "$DIR"
