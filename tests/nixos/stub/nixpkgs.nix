# A stand-in for the nixpkgs flake input with just enough `lib` for flake.nix to list its outputs.
# tests/test_nix.py evaluates the output *names* with it where no nixpkgs can be fetched; any attempt to
# build or evaluate a package fails with the message below instead of silently passing.
let
  genAttrs =
    names: f:
    builtins.listToAttrs (
      map (name: {
        inherit name;
        value = f name;
      }) names
    );
in
{
  lib = {
    inherit genAttrs;
    optionalAttrs = cond: attrs: if cond then attrs else { };
  };
  # `import nixpkgs { … }` imports this directory's default.nix.
  outPath = ./.;
}
