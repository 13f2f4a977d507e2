defmodule Yggdrasil.Broker do
  @moduledoc false
  # The broker clients: one per {broker, namespace}, opened on first use with the settings
  # `Yggdrasil.Config.broker_sources/2` finds at that moment (checked by
  # the broker's schema in Rust), and shared by
  # every channel and publisher of that namespace (the client keeps a fixed
  # small set of connections, whatever the number of channels).
  #
  # Lookups read an ETS table (a publish pays one `:ets.lookup/2`); only
  # opening goes through this process, which serializes it so that two
  # callers never open two clients for one namespace. Opening never does I/O:
  # connections open later, in Rust.
  #
  # Each client's owner is a small `Yggdrasil.Broker.Owner` process, linked
  # to this one: it logs the client's warnings (one per failed connection
  # attempt, not per channel) with the broker and namespace, and the client
  # closes when it dies. Subscriber processes monitor the owner, so if this
  # process and its owners ever die, they restart and subscribe on fresh
  # clients.
  use GenServer

  alias Yggdrasil.Broker.Client
  alias Yggdrasil.Broker.Owner

  @table __MODULE__

  @typedoc "An open client and what publishing needs to know about it."
  @type entry :: %{client: Client.t(), owner: pid(), publish_timeout: pos_integer()}

  @doc false
  def start_link(_), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc false
  # The client of `broker` for channels of `namespace`, opened if needed.
  # While this process restarts (its supervisor is up, its table not yet),
  # callers wait for it instead of failing: subscriber processes that lost
  # their client come straight back here.
  @spec client(atom(), atom()) :: {:ok, entry()} | {:error, binary()}
  def client(broker, namespace, waited \\ 0) do
    case :ets.lookup(@table, {broker, namespace}) do
      [{_, entry}] -> {:ok, entry}
      [] -> GenServer.call(__MODULE__, {:open, broker, namespace})
    end
  rescue
    ArgumentError -> when_restarted(broker, namespace, waited)
  catch
    :exit, {:noproc, _} -> when_restarted(broker, namespace, waited)
    :exit, reason -> {:error, "cannot open the :#{broker} client: #{inspect(reason)}"}
  end

  @restart_wait_ms 5_000

  defp when_restarted(broker, namespace, waited) do
    if Process.whereis(Yggdrasil.Supervisor) && waited < @restart_wait_ms do
      Process.sleep(10)
      client(broker, namespace, waited + 10)
    else
      {:error, "the :yggdrasil application is not running"}
    end
  end

  @doc false
  # What the client of {broker, namespace} holds (see Yggdrasil.Native), or
  # nil when none is open. For tests and introspection.
  @spec stats(atom(), atom()) :: %{atom() => non_neg_integer()} | nil
  def stats(broker, namespace) do
    case :ets.lookup(@table, {broker, namespace}) do
      [{_, %{client: client}}] -> Client.stats(client)
      [] -> nil
    end
  end

  @doc false
  # `stats/2` of every open client, by {broker, namespace}.
  @spec info() :: %{{atom(), atom()} => %{atom() => non_neg_integer()}}
  def info do
    for {key, %{client: client}} <- :ets.tab2list(@table), into: %{} do
      {key, Client.stats(client)}
    end
  rescue
    # Not started (the application is down).
    ArgumentError -> %{}
  end

  @impl GenServer
  def init(nil) do
    # Owners are linked: their exit is an entry to drop, not a crash here.
    Process.flag(:trap_exit, true)
    :ets.new(@table, [:named_table, :protected, read_concurrency: true])
    {:ok, nil}
  end

  @impl GenServer
  def handle_call({:open, broker, namespace}, _from, state) do
    case :ets.lookup(@table, {broker, namespace}) do
      [{_, entry}] -> {:reply, {:ok, entry}, state}
      [] -> {:reply, open(broker, namespace), state}
    end
  end

  @impl GenServer
  def handle_info({:EXIT, owner, _reason}, state) do
    :ets.match_delete(@table, {:_, %{owner: owner}})
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp open(broker, namespace) do
    with {:ok, given} <- sources(broker, namespace),
         {:ok, owner} <- Owner.start_link() do
      case Client.open(broker, given, owner) do
        {:ok, client} ->
          %{publish_timeout: timeout, endpoint: endpoint} = Client.info(client)
          Owner.label(owner, label(broker, namespace, endpoint))
          entry = %{client: client, owner: owner, publish_timeout: timeout}
          :ets.insert(@table, {{broker, namespace}, entry})
          {:ok, entry}

        {:error, _} = error ->
          Owner.stop(owner)
          error
      end
    end
  end

  # Whatever the config holds, this process must not crash: its clients
  # (every broker and namespace) would close with it. Only our own
  # ArgumentError messages are shown: another exception's may print a
  # config value, which may be a password.
  defp sources(broker, namespace) do
    Yggdrasil.Config.broker_sources(broker, namespace)
  rescue
    error in ArgumentError ->
      {:error, Exception.message(error)}

    error ->
      {:error, "cannot read the #{inspect(broker)} settings: #{inspect(error.__struct__)}"}
  end

  # Names the client in its warnings; never shows a password.
  defp label(broker, namespace, endpoint) do
    if namespace,
      do: ":#{broker} #{endpoint} (#{inspect(namespace)})",
      else: ":#{broker} #{endpoint}"
  end
end
