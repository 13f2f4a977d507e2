defmodule Yggdrasil.DoctestTest do
  use ExUnit.Case, async: true

  doctest Yggdrasil
  doctest Yggdrasil.Channel
  doctest Yggdrasil.Config
  doctest Yggdrasil.Registry
  doctest Yggdrasil.Adapter
  doctest Yggdrasil.Adapter.Elixir
  doctest Yggdrasil.Backend.Default
  doctest Yggdrasil.Transformer.Default
  doctest Yggdrasil.Transformer.Json
end
