# Layer groups for dockerTools images chained with `fromImage`.
#
# Every group is its own image: system -> Python dependencies -> application -> (GPU | API) extension, each
# built `fromImage` the one below. The lower images' layers are copied into the upper image unchanged (same
# tar bytes, same diff ids), so the gpu and api images share their lower layers byte for byte and a registry
# or `podman load` stores them once.
#
# dockerTools' layering does not leave out store paths the `fromImage` image already ships, so each group
# gets a `layeringPipeline` that first removes the closure of every lower group (`remove_paths`), then splits
# what is left by popularity into at most `budget` layers. The store paths of the lower closures are only
# known at build time, so the pipeline is a JSON file written by a derivation (dockerMakeLayers reads a
# pipeline given as a file).
{
  lib,
  closureInfo,
  jq,
  runCommand,
}:

{
  # Store paths whose closures the lower images already contain.
  lower ? [ ],
  # Most layers this group may add (the customisation layer comes on top).
  budget,
}:

if lower == [ ] then
  [
    [ "popularity_contest" ]
    [
      "limit_layers"
      budget
    ]
  ]
else
  runCommand "layering-pipeline.json"
    {
      nativeBuildInputs = [ jq ];
      lowerClosure = closureInfo { rootPaths = lower; };
      inherit budget;
    }
    ''
      jq -n --rawfile paths "$lowerClosure/store-paths" --argjson budget "$budget" '
        ($paths | split("\n") | map(select(length > 0))) as $lower
        | [ ["remove_paths", $lower], ["popularity_contest"], ["limit_layers", $budget] ]
      ' > $out
    ''
