# The few `pkgs` attributes nixos-modules/appliance.nix uses, for evaluating it with the real nixpkgs `lib`
# but without a nixpkgs checkout (tests/nixos/eval-module.nix). Derivations are plain attrsets with a fake
# store path: nothing is built, and `formats.toml` keeps the value so the test can check what would be rendered.
{ lib }:

let
  fakeDrv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
      meta = { };
    }
    // extra;
in
{
  appliance = fakeDrv "appliance-0.1.0" {
    version = "0.1.0";
    pythonEnv = fakeDrv "python3-env" { };
  };
  comfyui = fakeDrv "comfyui" { meta.mainProgram = "comfyui"; };

  # What the VM test files use to build their node configurations.
  stdenv.hostPlatform.system = "x86_64-linux";
  writeText = name: _text: fakeDrv name { };
  # Kept as data, so the test can check what would be built (and run the check script itself).
  runCommand =
    name: env: buildCommand:
    fakeDrv name (env // { inherit buildCommand; });
  linkFarm =
    name: entries:
    fakeDrv name {
      passthru.entries = map (e: {
        inherit (e) name;
        path = "${e.path}";
      }) entries;
    };
  fetchurl = { url, hash }: fakeDrv (baseNameOf url) { };
  jq = fakeDrv "jq" { };
  redis = fakeDrv "redis" { };
  curl = fakeDrv "curl" { };

  formats.toml =
    { }:
    {
      # The shape of nixpkgs' TOML type: nested attrsets and lists of scalars.
      type =
        let
          valueType =
            lib.types.oneOf [
              lib.types.bool
              lib.types.int
              lib.types.float
              lib.types.str
              lib.types.path
              (lib.types.attrsOf valueType)
              (lib.types.listOf valueType)
            ]
            // {
              description = "TOML value";
            };
        in
        lib.types.attrsOf valueType;
      generate = name: value: fakeDrv name { passthru.value = value; };
    };
}
