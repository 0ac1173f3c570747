# syntax=docker/dockerfile:1
# distracer image: the nodes of cluster/aws.yaml, cluster/gcp.yaml and cluster/kuberay/*, or one-off runs.
#   docker build -t distracer:latest .
#   docker run --rm --gpus all --shm-size=2g distracer:latest train --config tune_configs/laptop.yaml
# Build and push: docs/CLUSTER.md.
#
# The base image's Ray must be the one pyproject.toml pins (ray==2.60.0): all nodes of a cluster and the
# client that submits jobs must run the same Ray version. tests/test_dockerfile.py checks that they agree.
FROM rayproject/ray:2.60.0-py311-gpu

# Headless pygame for CarRacing's renderer; unbuffered output for `ray job logs` and `kubectl logs`.
ENV SDL_VIDEODRIVER=dummy \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The base image's own non-root user `ray` (uid 1000, group users = 100), which KubeRay and the
# launcher expect; numeric, so Kubernetes' runAsNonRoot can verify it. pip installs into its conda
# environment at /home/ray/anaconda3.
USER 1000:100
WORKDIR /home/ray/distracer
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Dependencies first, read from pyproject.toml alone, so that a code change does not reinstall torch.
# The constraint holds the image's own Ray: pip may add Ray's extras (tune, rllib) but never swap Ray.
# (README* : pyproject.toml names README.md; the wildcard lets a checkout without it build.)
COPY --chown=1000:100 pyproject.toml README* ./
RUN python -c "import ray; print(f'ray=={ray.__version__}')" > /home/ray/constraints.txt \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir -c /home/ray/constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The package itself, from this checkout; tune_configs/ beside it so that `--config tune_configs/...`
# resolves from the working directory, where Ray also starts job drivers.
COPY --chown=1000:100 distracer/ distracer/
COPY --chown=1000:100 tune_configs/ tune_configs/
RUN pip install --no-cache-dir --no-deps -c /home/ray/constraints.txt . \
 && python -c "import distracer, ray; assert ray.__version__ == '2.60.0', ray.__version__" \
 && distracer --help > /dev/null

ENTRYPOINT ["distracer"]
CMD ["--help"]
