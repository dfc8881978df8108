# nix/package.nix evaluated with the real nixpkgs `lib` and stand-ins for the Python package set, to hand its
# install step to tests/test_nix.py, which runs it in bash against this checkout (no build, no store writes):
#
#   nix-instantiate --eval --strict --json tests/nixos/eval-package.nix --argstr libPath … --argstr python …
{
  libPath,
  # The interpreter the install step runs (the test passes its own).
  python,
}:

let
  lib = import (/. + libPath + "/lib");
  fake = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    optional-dependencies = { };
  };
  ps =
    lib.genAttrs [
      "redis"
      "hiredis"
      "pydantic"
      "sdnotify"
      "nvidia-ml-py"
      "aiohttp"
      "prometheus-client"
      "pyyaml"
      "openai"
      "boto3"
      "setuptools"
      "wheel"
      "pytest"
      "pytest-asyncio"
      "pytest-timeout"
      "moto"
    ] fake
    // {
      # What the install step reads of the interpreter.
      python = {
        sitePackages = "lib/python3/site-packages";
        interpreter = python;
        withPackages = f: fake "python-env";
      };
      buildPythonPackage = attrs: attrs;
    };
  package = import ../../nix/package.nix {
    inherit lib;
    python3Packages = ps;
    runCommand = name: env: cmd: fake name;
    redis = fake "redis";
  };
in
{
  inherit (package) postInstall;
  sitePackages = ps.python.sitePackages;
}
