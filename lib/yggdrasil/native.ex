defmodule Yggdrasil.Native do
  @moduledoc false
  # The NIF loader and stubs: every stub is replaced by the Rust
  # implementation in `native/yggdrasil_nif` when the library loads (see
  # `load/0`). Only `Yggdrasil.Engine` calls them.
  #
  # Channel keys are `%Yggdrasil.Channel{}` structs with `metadata: nil`;
  # identity is the whole term compared with `=:=`.

  @on_load :load

  @doc false
  def load do
    priv =
      case :code.priv_dir(:yggdrasil) do
        {:error, _} -> "priv"
        dir -> to_string(dir)
      end

    path = Path.join(priv, "native/libyggdrasil_nif")

    case :erlang.load_nif(String.to_charlist(path), 0) do
      :ok ->
        :ok

      {:error, {:reload, _}} ->
        :ok

      {:error, reason} ->
        # The module still loads, with stubs that raise a clear error, and
        # `Yggdrasil.Application` refuses to start with this message (one
        # clear error, not a failed on_load and then UndefinedFunctionErrors).
        message =
          "yggdrasil: could not load the native engine from #{path}.so: #{inspect(reason)}. " <>
            "Build it with `mix compile` (needs cargo), or `make build` in the yggdrasil checkout."

        :persistent_term.put({__MODULE__, :load_error}, message)
        :ok
    end
  end

  @doc false
  # Why the NIF library did not load, or nil when it did.
  @spec load_error() :: binary() | nil
  def load_error, do: :persistent_term.get({__MODULE__, :load_error}, nil)

  defp not_loaded do
    :erlang.nif_error(
      "yggdrasil native engine not loaded: build it with `mix compile` (needs cargo on PATH)"
    )
  end

  # Only `Yggdrasil.Engine` calls these; what each one returns is said there.
  # `key` is a channel key, `cursor` a resource from an earlier call.

  @doc false
  @spec subscribe(term()) :: :ok | {:error, atom()}
  def subscribe(_key), do: not_loaded()

  @doc false
  @spec unsubscribe(term()) :: :not_subscribed | :unsubscribed | :emptied
  def unsubscribe(_key), do: not_loaded()

  @doc false
  @spec publish(term(), term()) :: :ok | {:more, reference()}
  def publish(_key, _message), do: not_loaded()

  @doc false
  @spec fanout_more(reference(), term()) :: :ok | {:more, reference()}
  def fanout_more(_cursor, _message), do: not_loaded()

  @doc false
  @spec set_connected(term(), boolean(), term()) :: :ok | {:more, reference()}
  def set_connected(_key, _connected, _message), do: not_loaded()

  @doc false
  @spec set_watched(term(), boolean()) :: boolean()
  def set_watched(_key, _watched), do: not_loaded()

  @doc false
  @spec set_janitor(pid()) :: :ok
  def set_janitor(_pid), do: not_loaded()

  @doc false
  @spec subscribers_page(term()) :: {[pid()], reference() | nil}
  def subscribers_page(_key), do: not_loaded()

  @doc false
  @spec subscribers_more(reference()) :: {[pid()], reference() | nil}
  def subscribers_more(_cursor), do: not_loaded()

  @doc false
  @spec watched_page(non_neg_integer()) :: {[term()], non_neg_integer() | nil}
  def watched_page(_from), do: not_loaded()

  @doc false
  @spec subscriber_count(term()) :: non_neg_integer()
  def subscriber_count(_key), do: not_loaded()

  @doc false
  @spec is_subscribed(term(), pid()) :: boolean()
  def is_subscribed(_key, _pid), do: not_loaded()

  @doc false
  @spec is_connected(term()) :: boolean()
  def is_connected(_key), do: not_loaded()

  @doc false
  @spec info() :: %{atom() => non_neg_integer()}
  def info, do: not_loaded()

  @doc false
  @spec reset_counters() :: :ok
  def reset_counters, do: not_loaded()

  @doc false
  @spec json_encode(term()) :: {:ok, binary()} | {:error, term()} | :too_big
  def json_encode(_term), do: not_loaded()

  @doc false
  @spec json_encode_dirty(term()) :: {:ok, binary()} | {:error, term()}
  def json_encode_dirty(_term), do: not_loaded()

  @doc false
  @spec json_decode(binary()) :: {:ok, term()} | {:error, term()}
  def json_decode(_binary), do: not_loaded()

  @doc false
  @spec json_decode_dirty(binary()) :: {:ok, term()} | {:error, term()}
  def json_decode_dirty(_binary), do: not_loaded()

  @doc false
  # TEST HOOK, never called by the library: panics inside the NIF on purpose
  # (`:plain`, or `:table` while holding the subscription table's lock) to
  # prove a Rust panic surfaces as `ErlangError` `:nif_panicked`, not a crash.
  @spec debug_panic(atom()) :: no_return()
  def debug_panic(_mode), do: not_loaded()
end
