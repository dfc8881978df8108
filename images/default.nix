# OCI images of the appliance, in the seed's cache layers (docs/nix.md, "Images"):
#
#   1 system        bash, coreutils, cacert, systemd (PID 1)           buildLayeredImage  -> system
#   2 dependencies  Python and the appliance's runtime libraries        buildLayeredImage  -> deps  (fromImage system)
#   3 application   the appliance package and its units                 buildLayeredImage  -> base  (fromImage deps)
#   4a GPU          CUDA torch + ComfyUI                                streamLayeredImage -> gpu   (fromImage base)
#   4b API          openai and boto3 SDKs                               streamLayeredImage -> api   (fromImage base)
#   5 config        /etc/appliance, entrypoint; values come at run time (env, volumes, secrets)
#
# Lower groups are tarballs in the store (fromImage needs one); the two final images are stream scripts, so
# `$(nix build --print-out-paths .#image-api) | podman load` writes no multi-gigabyte tarball to the store.
# created/mtime are fixed, so the same inputs give the same bytes.
{
  pkgs,
  # nixpkgs with `config = { allowUnfree = true; cudaSupport = true; }`, for the GPU group; null: no gpu image.
  cudaPkgs ? null,
  # The appliance as a Python module built without its optional SDKs (nix/package.nix, withOptional = false).
  appliance ? pkgs.callPackage ../nix/package.nix { withOptional = false; },
  # nixpkgs ships ComfyUI as `comfyui` from 26.05 on; when the pin lacks it, the GPU image carries Python with
  # CUDA torch and expects a ComfyUI checkout mounted at /opt/comfyui (see docs/nix.md), or pass a package here.
  comfyui ? if cudaPkgs != null then cudaPkgs.comfyui or null else null,
}:

let
  inherit (pkgs) lib dockerTools;

  epoch = "1970-01-01T00:00:01Z";
  pipeline = pkgs.callPackage ./layers.nix { };
  configLayer = pkgs.callPackage ./config.nix { inherit appliance; };

  python = appliance.pythonModule;

  # Group 1. systemd is PID 1 in the default mode; cacert for TLS to Redis and the APIs.
  systemContents = [
    pkgs.bashInteractive
    pkgs.coreutils
    pkgs.cacert
    pkgs.iana-etc
    pkgs.systemd
  ];

  # Group 2: the interpreter and the appliance's runtime libraries, without the appliance itself. These are
  # the same store paths the appliance's wrapper refers to, so group 3 adds only the appliance.
  depsEnv = python.withPackages (_: appliance.runtimeDependencies);

  apiEnv = python.withPackages (_: [ appliance ] ++ lib.concatLists (lib.attrValues appliance.optionalDependencies));

  # ComfyUI's requirements.txt as nixpkgs attribute names (the list nixpkgs' own comfyui package uses, without
  # the packages only its newest releases need), for a ComfyUI checkout mounted at /opt/comfyui when the pinned
  # nixpkgs has no comfyui. A name the pin lacks stops the evaluation of image-gpu with its name, rather than
  # building an image whose ComfyUI cannot import it.
  comfyuiRequirements = [
    "aiohttp"
    "alembic"
    "av"
    "comfyui-embedded-docs"
    "comfyui-frontend-package"
    "comfyui-workflow-templates"
    "einops"
    "kornia"
    "numpy"
    "pillow"
    "psutil"
    "pydantic"
    "pydantic-settings"
    "pyyaml"
    "requests"
    "safetensors"
    "scipy"
    "sentencepiece"
    "spandrel"
    "sqlalchemy"
    "tokenizers"
    "torch"
    "torchaudio"
    "torchsde"
    "torchvision"
    "tqdm"
    "transformers"
    "yarl"
  ];

  gpuPython =
    if cudaPkgs == null then
      null
    else
      cudaPkgs.python3.withPackages (
        ps:
        map (
          name:
          ps.${name}
            or (throw "images: python3Packages.${name} (a ComfyUI requirement) is missing from the pinned nixpkgs")
        ) comfyuiRequirements
      );

  common = {
    created = epoch;
    mtime = epoch;
    # Headroom under the 127-layer limit of overlay storage: the groups' budgets add up to about 85.
    maxLayers = 125;
  };

  system = dockerTools.buildLayeredImage (
    common
    // {
      name = "appliance-system";
      tag = "latest";
      contents = systemContents;
      layeringPipeline = pipeline { budget = 24; };
    }
  );

  deps = dockerTools.buildLayeredImage (
    common
    // {
      name = "appliance-deps";
      tag = "latest";
      fromImage = system;
      contents = [ depsEnv ];
      layeringPipeline = pipeline {
        lower = systemContents;
        budget = 24;
      };
    }
  );

  base = dockerTools.buildLayeredImage (
    common
    // {
      name = "appliance-base";
      tag = "latest";
      fromImage = deps;
      contents = [ appliance ];
      layeringPipeline = pipeline {
        lower = systemContents ++ [ depsEnv ];
        budget = 4;
      };
      config = configLayer.config { machineType = "api"; };
      extraCommands = configLayer.extraCommands { machineType = "api"; };
    }
  );

  belowExtensions = systemContents ++ [
    depsEnv
    appliance
  ];

  extension =
    {
      name,
      machineType,
      contents,
      env ? { },
      budget,
    }:
    dockerTools.streamLayeredImage (
      common
      // {
        inherit name contents;
        tag = "latest";
        fromImage = base;
        layeringPipeline = pipeline {
          lower = belowExtensions;
          inherit budget;
        };
        # Group 5: configuration files; the values themselves arrive at run time.
        config = configLayer.config { inherit machineType env; };
        extraCommands = configLayer.extraCommands { inherit machineType env; };
        passthru = { inherit base deps system; };
      }
    );

  api = extension {
    name = "appliance-api";
    machineType = "api";
    contents = [ apiEnv ];
    budget = 8;
  };

  gpu =
    if cudaPkgs == null then
      null
    else
      extension {
        name = "appliance-gpu";
        machineType = "gpu";
        # The comfyui package brings its own Python environment; the fallback runs a mounted checkout.
        contents = if comfyui != null then [ comfyui ] else [ gpuPython ];
        budget = 24;
        env =
          {
            # Nix-built CUDA finds libcuda via /run/opengl-driver (the NVIDIA container toolkit mounts it
            # there on NixOS hosts); on other hosts CDI puts the driver into FHS directories.
            LD_LIBRARY_PATH = "/run/opengl-driver/lib:/usr/lib64:/usr/lib/x86_64-linux-gnu";
            NVIDIA_DRIVER_CAPABILITIES = "compute,utility";
            # ComfyUI's files (output, input, user, temp, database) under the image's volume, also in
            # single-process mode where no systemd StateDirectory= exists; the same place the units use.
            APPLIANCE_COMFYUI__STATE_DIR = "/var/lib/appliance";
          }
          // (
            if comfyui != null then
              { APPLIANCE_COMFYUI__COMMAND = builtins.toJSON [ (lib.getExe comfyui) ]; }
            else
              {
                APPLIANCE_COMFYUI__COMMAND = builtins.toJSON [
                  "${gpuPython}/bin/python"
                  "main.py"
                ];
                APPLIANCE_COMFYUI__WORKDIR = "/opt/comfyui";
              }
          );
      };
in
{
  inherit
    system
    deps
    base
    api
    gpu
    ;
}
