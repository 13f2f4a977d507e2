defmodule Yggdrasil.ArchitectureTest do
  # The layering rules of the library, read from its compiled modules: who
  # may call the NIF stubs, who may name an adapter's modules, and that
  # every public function and callback is documented.
  use ExUnit.Case, async: true

  # The library's own modules (in the test build, test/support is compiled
  # into the application too).
  @lib Path.expand("../lib", __DIR__)
  @modules for m <- Application.spec(:yggdrasil, :modules),
               String.starts_with?(to_string(m.module_info(:compile)[:source]), @lib),
               do: m

  # Every module atom the code of `module` mentions (calls, literals,
  # patterns), from its debug info; documentation is not code.
  defp referenced(module) do
    {:ok, {^module, [debug_info: {:debug_info_v1, backend, data}]}} =
      module |> :code.which() |> :beam_lib.chunks([:debug_info])

    {:ok, %{definitions: definitions}} = backend.debug_info(:elixir_v1, module, data, [])

    definitions |> atoms(MapSet.new()) |> MapSet.delete(module) |> MapSet.to_list()
  end

  defp atoms(atom, acc) when is_atom(atom), do: MapSet.put(acc, atom)
  defp atoms(list, acc) when is_list(list), do: Enum.reduce(list, acc, &atoms/2)
  defp atoms(tuple, acc) when is_tuple(tuple), do: atoms(Tuple.to_list(tuple), acc)
  defp atoms(map, acc) when is_map(map), do: atoms(Map.to_list(map), acc)
  defp atoms(_other, acc), do: acc

  defp callers_of(target), do: for(m <- @modules, target in referenced(m), do: m)

  # One facade per Rust crate behind the NIF: the engine and the brokers.
  test "only Yggdrasil.Engine and Yggdrasil.Broker.Client call the NIF stubs" do
    assert length(@modules) > 20

    assert Enum.sort(callers_of(Yggdrasil.Native)) == [
             Yggdrasil.Broker.Client,
             Yggdrasil.Engine
           ]
  end

  # An adapter is its module, its subscriber and publisher modules, and the
  # modules nested in those.
  defp adapter_families do
    for module <- @modules,
        function_exported?(module, :get_subscriber_module, 0),
        {:ok, subscriber} = module.get_subscriber_module(),
        {:ok, publisher} = module.get_publisher_module(),
        do: {module, [module, subscriber, publisher]}
  end

  defp member?(module, family) do
    Enum.any?(family, fn root ->
      module == root or String.starts_with?(Atom.to_string(module), Atom.to_string(root) <> ".")
    end)
  end

  test "no module names another adapter's modules" do
    families = adapter_families()
    assert length(families) >= 2
    # The check sees module names in literals too (the boot list).
    assert Yggdrasil.Adapter.Elixir in referenced(Yggdrasil.Application)

    violations =
      for module <- @modules,
          {adapter, family} <- families,
          not member?(module, family),
          named <- referenced(module),
          member?(named, family),
          # The application registers the built-in adapters at boot.
          not (module == Yggdrasil.Application and named == adapter),
          do: {module, named}

    assert violations == []
  end

  test "every public function and callback of a public module has docs" do
    undocumented =
      for module <- @modules,
          {:docs_v1, _, _, _, moduledoc, _, docs} = Code.fetch_docs(module),
          moduledoc != :hidden,
          {{kind, name, arity}, _, _, doc, _} <- docs,
          kind in [:function, :macro, :callback, :macrocallback],
          doc == :none,
          do: {module, kind, name, arity}

    assert undocumented == []
  end

  test "every public module has a moduledoc" do
    assert for(
             module <- @modules,
             {:docs_v1, _, _, _, :none, _, _} <- [Code.fetch_docs(module)],
             do: module
           ) == []
  end
end
