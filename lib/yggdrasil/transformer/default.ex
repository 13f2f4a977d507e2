defmodule Yggdrasil.Transformer.Default do
  @moduledoc """
  The `:default` transformer: messages pass unchanged.

      iex> Yggdrasil.Transformer.Default.encode(%Yggdrasil.Channel{}, {:any, "term"})
      {:ok, {:any, "term"}}
  """
  use Yggdrasil.Transformer, name: :default
end
