{
  description = "appliance: systemd-native GPU and API machines working one Redis job pool";

  # One input, pinned in flake.lock (nixos-26.05). Move it with
  # `nix flake lock --override-input nixpkgs github:NixOS/nixpkgs/<rev>`.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      # Only names are computed from `lib` at the top level: tests/test_nix.py lists the outputs with a stub
      # nixpkgs that has genAttrs and optionalAttrs and nothing else.
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      # CUDA (the GPU image) is built for x86_64-linux only.
      gpuSystems = [ "x86_64-linux" ];

      forAllSystems = lib.genAttrs systems;
      hasGpu = system: builtins.elem system gpuSystems;

      pkgsFor =
        system:
        import nixpkgs {
          inherit system;
          overlays = [ self.overlays.default ];
        };

      # Unfree and CUDA only here, so the rest of the flake never builds CUDA.
      cudaPkgsFor =
        system:
        import nixpkgs {
          inherit system;
          overlays = [ self.overlays.default ];
          config = {
            allowUnfree = true;
            cudaSupport = true;
          };
        };

      imagesFor =
        system:
        import ./images {
          pkgs = pkgsFor system;
          cudaPkgs = if hasGpu system then cudaPkgsFor system else null;
        };

      vmTest =
        system: file:
        let
          pkgs = pkgsFor system;
        in
        pkgs.testers.runNixOSTest (import file { inherit self pkgs; });
    in
    {
      overlays.default = final: _prev: {
        appliance = final.python3Packages.toPythonApplication (final.callPackage ./nix/package.nix { });
      };

      packages = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          images = imagesFor system;
        in
        {
          default = pkgs.appliance;
          appliance = pkgs.appliance;
          image-base = images.base;
          image-api = images.api;
        }
        // lib.optionalAttrs (hasGpu system) { image-gpu = images.gpu; }
      );

      nixosModules = {
        default = self.nixosModules.appliance;
        appliance =
          { lib, pkgs, ... }:
          {
            imports = [ ./nixos-modules/appliance.nix ];
            services.appliance.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          };
      };

      checks = forAllSystems (system: {
        package = self.packages.${system}.default;
        # The pytest suite against a real redis-server, in the build sandbox.
        pytest = self.packages.${system}.default.passthru.tests.pytest;
        image-api = self.packages.${system}.image-api;
        # The NixOS VM test of a pool: redis, a gpu and an api machine (needs KVM on the builder).
        vm = vmTest system ./tests/nixos/cluster.nix;
      });

      devShells = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          default = pkgs.mkShell {
            packages = [
              (pkgs.python3.withPackages (
                ps:
                pkgs.appliance.passthru.runtimeDependencies
                ++ lib.concatLists (lib.attrValues pkgs.appliance.passthru.optionalDependencies)
                ++ [
                  ps.setuptools
                  ps.pytest
                  ps.pytest-asyncio
                  ps.mypy
                ]
              ))
              pkgs.redis
              pkgs.ruff
              pkgs.nixfmt-tree
            ];
            shellHook = ''
              export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
            '';
          };
        }
      );

      # `nix run` runs the demo: a private Redis, a machine, a few jobs (`appliance demo`).
      apps = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          demo = pkgs.writeShellApplication {
            name = "appliance-demo";
            runtimeInputs = [ pkgs.redis ];
            text = ''exec ${lib.getExe pkgs.appliance} demo "$@"'';
          };
        in
        {
          default = {
            type = "app";
            program = lib.getExe demo;
            meta.description = "Run the appliance demo against a private redis-server";
          };
        }
      );

      formatter = forAllSystems (system: (pkgsFor system).nixfmt-tree);
    };
}
