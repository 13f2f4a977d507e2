defmodule Yggdrasil.Native do
  @moduledoc false
  # The NIF loader and stubs: every stub is replaced by the Rust
  # implementation in `native/yggdrasil_nif` when the library loads (see
  # `load/0`). Only `Yggdrasil.Engine` calls the engine's and only
  # `Yggdrasil.Broker.Client` the brokers' (`broker_*`).
  #
  # Channel keys are `%Yggdrasil.Channel{}` structs with `metadata: nil`;
  # identity is the whole term compared with `=:=`.

  @on_load :load

  @doc false
  # Runs when this module is loaded: at boot, and again on every reload
  # (`:code.load_file/1`, `l/1` in IEx, a release upgrade). Returns :ok when
  # the module may become current.
  def load do
    priv =
      case :code.priv_dir(:yggdrasil) do
        {:error, _} -> "priv"
        dir -> to_string(dir)
      end

    path = Path.join(priv, "native/libyggdrasil_nif")

    case :erlang.load_nif(String.to_charlist(path), 0) do
      :ok ->
        # A library built after an earlier load failed: that error is over.
        forget_load_error()
        :ok

      {:error, {:reload, _}} ->
        # load/0 called again from code that already has the library.
        :ok

      {:error, {:upgrade, _}} ->
        # A reload while an earlier copy of this module has the library: the
        # VM would need an upgrade callback, which rustler does not offer, and
        # the engine's state (the subscription table, the monitors) lives in
        # the loaded library, where a second copy could not take it over.
        # Failing here makes the VM keep the loaded code current (the
        # reload returns {:error, :on_load_failure}); the engine carries on.
        {:error,
         "yggdrasil: the native engine is loaded already and cannot be replaced while " <>
           "the VM runs; the loaded Yggdrasil.Native stays current (restart the VM to load another)"}

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

  # Erasing a persistent term costs a scan of every process: only when set.
  defp forget_load_error do
    if load_error(), do: :persistent_term.erase({__MODULE__, :load_error})
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
  # publish/2 never holding the table lock while the message is copied: for
  # messages whose copy grows with what they hold.
  @spec publish_large(term(), term()) :: :ok | {:more, reference()}
  def publish_large(_key, _message), do: not_loaded()

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
  @spec set_generator(pid()) :: :ok
  def set_generator(_pid), do: not_loaded()

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

  # Broker clients (`native/yggdrasil_nif/src/broker/`), called only by
  # `Yggdrasil.Broker.Client`. `client` is the resource of one broker and
  # namespace; every call returns at once (no I/O on a scheduler). What the
  # client sends to processes, from its delivery thread (`:published`
  # replies from the runtime thread that got the broker's answer):
  #
  #   {:"$yggdrasil_broker", :connected}          to a subscriber: the broker
  #                                               confirmed its name (again
  #                                               after every reconnect)
  #   {:"$yggdrasil_broker", :disconnected}       to a subscriber: the
  #                                               connection carrying it was lost
  #   {:"$yggdrasil_broker", :event, payload, metadata}
  #                                               to a subscriber; metadata is
  #                                               the broker's map
  #   {:"$yggdrasil_broker", :published, ref, :ok | {:error, binary}}
  #                                               to the publishing process, one
  #                                               per accepted broker_publish/5
  #                                               (ref: its tag), within
  #                                               publish_timeout
  #   {:"$yggdrasil_broker", :warning, binary}    to the owner: a failed connect,
  #                                               a refused subscription, ...
  #
  # Settings travel as `given`: `[{key, origin, value}]`, what
  # `Yggdrasil.Config` found for each key and where; the broker's schema in
  # Rust checks them (errors name the key and the origin).

  @doc false
  # The broker's setting keys, or why it cannot be used (unknown, not built in).
  @spec broker_keys(atom()) :: {:ok, [atom()]} | {:error, binary()}
  def broker_keys(_broker), do: not_loaded()

  @doc false
  @spec broker_settings(atom(), [{atom(), binary(), term()}]) ::
          {:ok, keyword()} | {:error, binary()}
  def broker_settings(_broker, _given), do: not_loaded()

  @doc false
  # The owner's death closes the client.
  @spec broker_open(atom(), [{atom(), binary(), term()}], pid()) ::
          {:ok, reference()} | {:error, binary()}
  def broker_open(_broker, _given, _owner), do: not_loaded()

  @doc false
  @spec broker_info(reference()) :: %{publish_timeout: pos_integer(), endpoint: binary()}
  def broker_info(_client), do: not_loaded()

  @doc false
  @spec broker_check_name(reference(), term()) :: :ok | {:error, binary()}
  def broker_check_name(_client, _name), do: not_loaded()

  @doc false
  # The process the broker delivery thread paces itself with
  # (`Yggdrasil.Broker.Pacer`), and its answer to a pace.
  @spec broker_set_pacer(pid()) :: :ok
  def broker_set_pacer(_pid), do: not_loaded()

  @doc false
  @spec broker_paced(non_neg_integer()) :: :ok
  def broker_paced(_seq), do: not_loaded()

  @doc false
  # `{budget, max_wait_ms}`: messages sent between two paces, and the longest
  # one waits, as the delivery thread paces itself.
  @spec broker_pace_limits() :: {pos_integer(), pos_integer()}
  def broker_pace_limits, do: not_loaded()

  @doc false
  # A process that sends its share of wide broker fan-outs
  # (`Yggdrasil.Broker.Sender`): it is sent `{tag, :send, cursor, message}`
  # and goes on with `fanout_more/2`.
  @spec broker_set_sender(non_neg_integer(), pos_integer(), pid()) :: :ok
  def broker_set_sender(_index, _of, _pid), do: not_loaded()

  @doc false
  # Counts `dropped` events a subscriber process shed (see `broker_stats/1`).
  @spec broker_shed(reference(), non_neg_integer()) :: :ok
  def broker_shed(_client, _dropped), do: not_loaded()

  @doc false
  # `pid` is monitored: its death unsubscribes it. `route`: nil (events go
  # to `pid`) or `{channel_key, :binary | :json}` (the NIF decodes them and
  # delivers them to the channel's subscribers itself, with the channel's
  # `{:Y_CONNECTED, _}`/`{:Y_DISCONNECTED, _}`).
  @spec broker_subscribe(reference(), term(), pid(), nil | {term(), :binary | :json}) ::
          :ok | {:error, binary()}
  def broker_subscribe(_client, _name, _pid, _route), do: not_loaded()

  @doc false
  @spec broker_unsubscribe(reference(), term(), pid()) :: :ok | {:error, binary()}
  def broker_unsubscribe(_client, _name, _pid), do: not_loaded()

  @doc false
  # `:ok`: exactly one `:published` message with `tag` follows. `tag` is a
  # reference made for this publish, so that the caller's `receive` for the
  # reply skips its mailbox's older messages.
  @spec broker_publish(reference(), term(), binary(), map(), reference()) ::
          :ok | {:error, binary()}
  def broker_publish(_client, _name, _payload, _options, _tag), do: not_loaded()

  @doc false
  # broker_publish/5 on a dirty scheduler, for big payloads.
  @spec broker_publish_dirty(reference(), term(), binary(), map(), reference()) ::
          :ok | {:error, binary()}
  def broker_publish_dirty(_client, _name, _payload, _options, _tag), do: not_loaded()

  @doc false
  @spec broker_stats(reference()) :: %{atom() => non_neg_integer()}
  def broker_stats(_client), do: not_loaded()

  # The test and bench hooks (`native/yggdrasil_nif/src/hooks.rs`): only in
  # the builds whose library has them (`MIX_ENV=test` and `bench` of this
  # project; the mix compiler decides both). Everywhere else these functions
  # do not exist, and the library has no such NIFs.
  if Code.ensure_loaded?(Mix.Tasks.Compile.YggdrasilNative) and
       Mix.Tasks.Compile.YggdrasilNative.test_hooks?() do
    @doc false
    # TEST HOOK, never called by the library: panics inside the NIF on purpose
    # (`:plain`, or `:table` while holding the subscription table's lock) to
    # prove a Rust panic surfaces as `ErlangError` `:nif_panicked`, not a crash.
    @spec debug_panic(atom()) :: no_return()
    def debug_panic(_mode), do: not_loaded()

    @doc false
    # BENCH HOOKS, never called by the library: a NIF call that does nothing,
    # one that only sends `message` to `pid` as a publish does (the floors
    # `bench/fixed_cost.exs` sets beside `publish/2`), and pure computation
    # timed by CPU time as fan-outs time themselves (what the machine does to
    # any code, which the crowd soak sets beside its fan-outs).
    @spec floor_call(term(), term()) :: :ok
    def floor_call(_target, _message), do: not_loaded()

    @doc false
    @spec floor_send(pid(), term()) :: :ok
    def floor_send(_pid, _message), do: not_loaded()

    @doc false
    @spec floor_cpu_stalls(non_neg_integer(), pos_integer(), non_neg_integer()) :: %{
            units: non_neg_integer(),
            over_1ms: non_neg_integer(),
            longest_us: non_neg_integer()
          }
    def floor_cpu_stalls(_duration_ms, _unit_us, _pause_us), do: not_loaded()
  end
end
