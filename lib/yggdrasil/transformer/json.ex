defmodule Yggdrasil.Transformer.Json do
  @moduledoc """
  The `:json` transformer: maps are published as JSON text and subscribers
  receive maps with string keys. JSON is handled natively (serde_json).

      iex> Yggdrasil.Transformer.Json.encode(%Yggdrasil.Channel{}, %{"hello" => "world"})
      {:ok, ~s({"hello":"world"})}
      iex> Yggdrasil.Transformer.Json.decode(%Yggdrasil.Channel{}, ~s({"n":[1,2.5,null,true]}))
      {:ok, %{"n" => [1, 2.5, nil, true]}}
      iex> {:error, _reason} = Yggdrasil.Transformer.Json.decode(%Yggdrasil.Channel{}, "{oops")

  Encoding follows Jason's mapping: atom keys and values become strings,
  `nil` becomes `null`, and the structs Jason knows become what it writes
  for them: `Date`, `Time`, `NaiveDateTime` and `DateTime` their ISO 8601
  text, `Decimal` its digits as a string. Tuples, pids, other structs and
  non-UTF-8 binaries give `{:error, reason}`.

      iex> Yggdrasil.Transformer.Json.encode(%Yggdrasil.Channel{}, %{on: ~D[2026-12-07]})
      {:ok, ~s({"on":"2026-12-07"})}

  As with Jason, any nesting depth works both ways, and
  integers of any size stay exact both ways; `-0` decodes to the integer
  `0`, `-0.0` to a float.
  """
  use Yggdrasil.Transformer, name: :json

  alias Yggdrasil.Channel
  alias Yggdrasil.Engine

  # Large or deep terms go to a dirty scheduler (see Yggdrasil.Engine).
  @impl Yggdrasil.Transformer
  def decode(%Channel{}, message) when is_binary(message), do: Engine.json_decode(message)

  def decode(%Channel{}, message),
    do: {:error, "JSON decode expects a binary, got: #{inspect(message)}"}

  def decode(other, _message), do: Yggdrasil.Channel.not_a_channel(other)

  @impl Yggdrasil.Transformer
  def encode(%Channel{}, message) when is_map(message) and not is_struct(message) do
    with {:error, _} = error <- Engine.json_encode(message) do
      # Only a message the native encoder refused pays for this walk.
      case jsonable(message) do
        ^message -> error
        known -> Engine.json_encode(known)
      end
    end
  end

  def encode(%Channel{}, message),
    do: {:error, "JSON encode expects a map, got: #{inspect(message)}"}

  def encode(other, _message), do: Yggdrasil.Channel.not_a_channel(other)

  # The structs Jason's own encoders write, as they write them; the rest
  # left for the native encoder to refuse.
  @calendar [Date, Time, NaiveDateTime, DateTime]

  defp jsonable(%module{} = struct) when module in @calendar, do: module.to_iso8601(struct)
  # Decimal is not a dependency: matched by name, called only when loaded.
  defp jsonable(%{__struct__: Decimal} = decimal), do: apply(Decimal, :to_string, [decimal])
  defp jsonable(%_{} = struct), do: struct
  defp jsonable(map) when is_map(map), do: Map.new(map, fn {k, v} -> {k, jsonable(v)} end)
  defp jsonable(list) when is_list(list), do: jsonable_list(list)
  defp jsonable(other), do: other

  # Improper tails are kept for the native encoder to refuse.
  defp jsonable_list([head | tail]), do: [jsonable(head) | jsonable_list(tail)]
  defp jsonable_list(tail), do: tail
end
