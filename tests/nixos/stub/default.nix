# Importing the stub nixpkgs means something evaluated a package: only output names may be evaluated here.
_: throw "tests/nixos/stub: the stub nixpkgs has no packages (only output names can be evaluated without nixpkgs)"
