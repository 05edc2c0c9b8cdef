#!/bin/sh
# Installs the Debian packages named in its arguments, in one image layer, then drops apt's
# lists. The names arrive as arguments ("$@"), never as shell text: rlmesh_images.recipe
# validates each one first.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "$@"
rm -rf /var/lib/apt/lists/*
