defmodule Yggdrasil.PackageTest do
  # Spec section 8 / issue 10 point 6: the package carries its license and
  # everything a dependency build needs, the Rust workspace included.
  use ExUnit.Case, async: true

  @root Path.expand("..", __DIR__)
  # Tracked files a package deliberately leaves out: development tooling.
  @dev_only ~w(test/ bench/ .ci/ .gitignore Makefile)

  defp package, do: Mix.Project.config()[:package]

  # The package's files as hex expands them: globs, directories recursively.
  defp packaged_files do
    package()[:files]
    |> Enum.flat_map(&Path.wildcard(Path.join(@root, &1), match_dot: true))
    |> Enum.flat_map(fn path ->
      if File.dir?(path), do: Path.wildcard(Path.join(path, "**"), match_dot: true), else: [path]
    end)
    |> Enum.reject(&File.dir?/1)
    |> Enum.map(&Path.relative_to(&1, @root))
    |> MapSet.new()
  end

  defp tracked_files do
    case System.cmd("git", ["ls-files"], cd: @root, stderr_to_stdout: true) do
      {out, 0} -> String.split(out, "\n", trim: true)
      # Not a git checkout: the sources the NIF build reads.
      _ -> Path.wildcard(Path.join(@root, "{lib,native}/**/*.{ex,rs,toml}"))
    end
    |> Enum.map(&Path.relative_to(&1, @root))
  end

  test "description, license and files are declared" do
    assert is_binary(Mix.Project.config()[:description])
    assert package()[:licenses] == ["Apache-2.0"]
    assert is_list(package()[:files])
  end

  test "the license is the one the crates declare, and its text is shipped" do
    assert File.read!(Path.join(@root, "Cargo.toml")) =~ ~s(license = "Apache-2.0")
    text = File.read!(Path.join(@root, "LICENSE"))
    assert text =~ "Apache License"
    assert text =~ "Version 2.0, January 2004"
    assert "LICENSE" in packaged_files()
  end

  test "every tracked file but development tooling is in the package" do
    files = packaged_files()
    needed = Enum.reject(tracked_files(), &String.starts_with?(&1, @dev_only))

    for required <- ~w(mix.exs Cargo.toml Cargo.lock LICENSE lib/yggdrasil.ex),
        do: assert(required in files, "#{required} is not packaged")

    assert Enum.any?(files, &String.starts_with?(&1, "native/yggdrasil_nif/src/"))
    assert Enum.any?(files, &String.starts_with?(&1, "native/yggdrasil_engine/src/"))
    assert needed -- MapSet.to_list(files) == []
  end

  test "no build output is packaged" do
    for file <- packaged_files() do
      refute file =~ ~r{(^|/)(target|_build|deps)/}, "#{file} is build output"
      refute String.ends_with?(file, [".so", ".tmp", ".beam"]), "#{file} is build output"
    end
  end
end
