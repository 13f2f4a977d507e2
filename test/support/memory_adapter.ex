# A complete third-party adapter written only against the public adapter API
# (spec section 7), as a Yggdrasil 6 adapter for Redis or RabbitMQ would be:
# the "broker" is `Yggdrasil.MemoryBroker`, a `:pg` scope.

defmodule Yggdrasil.Adapter.Memory do
  @moduledoc false
  # Subscriber and publisher modules are derived from the name:
  # Yggdrasil.Subscriber.Adapter.Memory and Yggdrasil.Publisher.Adapter.Memory.
  use Yggdrasil.Adapter, name: :memory
end

defmodule Yggdrasil.Subscriber.Adapter.Memory do
  @moduledoc false
  # One process per channel while it has subscribers. It joins the channel's
  # group while the broker is online, reports the connection state with
  # Manager.connected/disconnected and hands messages over with
  # Publisher.notify/3.
  use Yggdrasil.Subscriber.Adapter
  use GenServer

  alias Yggdrasil.MemoryBroker
  alias Yggdrasil.Subscriber.Manager
  alias Yggdrasil.Subscriber.Publisher

  # start_link/2 is the default one from `use Yggdrasil.Subscriber.Adapter`.

  @impl GenServer
  def init(%{channel: channel}) do
    case MemoryBroker.setting(channel, :refuse) do
      nil ->
        # So that terminate/2 runs on a supervisor shutdown too.
        Process.flag(:trap_exit, true)
        record_overlap(channel)
        MemoryBroker.bump(channel, :starts)
        # Join the control group before looking at the broker state, so
        # that no drop/restore in between is missed.
        :ok = :pg.join(MemoryBroker.scope(), MemoryBroker.adapter_group(channel), self())
        {:ok, %{channel: channel, connected?: false}, {:continue, :connect}}

      reason ->
        {:stop, reason}
    end
  end

  @impl GenServer
  def handle_continue(:connect, state), do: {:noreply, connect(state)}

  @impl GenServer
  def handle_info({:memory_message, payload, metadata}, %{channel: channel} = state) do
    Publisher.notify(channel, payload, metadata)
    {:noreply, state}
  end

  def handle_info(:memory_up, state), do: {:noreply, connect(state)}
  def handle_info(:memory_down, state), do: {:noreply, disconnect(state)}
  def handle_info(:memory_crash, state), do: {:stop, :memory_crash, state}
  def handle_info(_other, state), do: {:noreply, state}

  @impl GenServer
  def terminate(_reason, state) do
    MemoryBroker.hold(state.channel, :hold_stop)
    disconnect(state)
  end

  defp connect(%{connected?: false, channel: channel} = state) do
    if MemoryBroker.online?(channel) do
      :ok = :pg.join(MemoryBroker.scope(), MemoryBroker.data_group(channel), self())
      Manager.connected(channel)
      %{state | connected?: true}
    else
      state
    end
  end

  defp connect(state), do: state

  defp disconnect(%{connected?: true, channel: channel} = state) do
    :pg.leave(MemoryBroker.scope(), MemoryBroker.data_group(channel), self())
    Manager.disconnected(channel)
    %{state | connected?: false}
  end

  defp disconnect(state), do: state

  # Two adapter processes alive for one channel at once would deliver every
  # message twice: tests check that this never happens.
  defp record_overlap(channel) do
    others = MemoryBroker.adapters(channel) -- [self()]

    if others != [] do
      MemoryBroker.set(channel, {:overlap, self()}, others)
    end
  end
end

defmodule Yggdrasil.Publisher.Adapter.Memory do
  @moduledoc false
  # Pooled publisher workers: encode with the channel's transformer and send
  # to the connected adapters of the channel. publish/4 is overridden to
  # carry the metadata option along.
  use Yggdrasil.Publisher.Adapter
  use GenServer

  alias Yggdrasil.Channel
  alias Yggdrasil.MemoryBroker
  alias Yggdrasil.Transformer

  @impl Yggdrasil.Publisher.Adapter
  def publish(publisher, %Channel{} = channel, message, options) do
    GenServer.call(publisher, {:publish, channel, message, options[:metadata]})
  end

  # For `:memory_caller` (`publish: :caller`), as a broker adapter whose
  # publishing needs no process does it.
  @impl Yggdrasil.Publisher.Adapter
  def publish_in_caller(%Channel{} = channel, _route, message, options) do
    MemoryBroker.bump(channel, {:caller_publish, self()})
    send_to_adapters(channel, message, options[:metadata])
  end

  @impl GenServer
  def init(namespace) do
    :ok = :pg.join(MemoryBroker.scope(), MemoryBroker.publisher_group(namespace), self())
    {:ok, namespace}
  end

  @impl GenServer
  def handle_call({:publish, channel, message}, from, namespace),
    do: handle_call({:publish, channel, message, nil}, from, namespace)

  def handle_call({:publish, %Channel{} = channel, message, metadata}, _from, namespace) do
    MemoryBroker.hold(channel, :hold_publish)
    if MemoryBroker.setting(channel, :crash_publish), do: raise("memory publisher crashed")

    {:reply, send_to_adapters(channel, message, metadata), namespace}
  end

  defp send_to_adapters(channel, message, metadata) do
    with {:ok, payload} <- Transformer.encode(channel, message) do
      group = MemoryBroker.data_group(channel)

      for pid <- :pg.get_members(MemoryBroker.scope(), group) do
        send(pid, {:memory_message, payload, metadata})
      end

      :ok
    end
  end
end

defmodule Yggdrasil.Adapter.MemoryJson do
  @moduledoc false
  # Explicit modules and a default transformer.
  use Yggdrasil.Adapter,
    name: :memory_json,
    transformer: :json,
    subscriber: Yggdrasil.Subscriber.Adapter.Memory,
    publisher: Yggdrasil.Publisher.Adapter.Memory
end

defmodule Yggdrasil.Adapter.MemoryCaller do
  @moduledoc false
  # The shape of a broker adapter: one subscriber process per channel (the
  # default `delivery: :process`), publishing in the caller, no pool.
  use Yggdrasil.Adapter,
    name: :memory_caller,
    publish: :caller,
    subscriber: Yggdrasil.Subscriber.Adapter.Memory,
    publisher: Yggdrasil.Publisher.Adapter.Memory
end

defmodule Yggdrasil.Adapter.Ghost do
  @moduledoc false
  # Neither Yggdrasil.Subscriber.Adapter.Ghost nor the publisher exist.
  use Yggdrasil.Adapter, name: :ghost
end

defmodule Yggdrasil.Adapter.HalfGhost do
  @moduledoc false
  use Yggdrasil.Adapter,
    name: :half_ghost,
    subscriber: Yggdrasil.Subscriber.Adapter.DoesNotExist,
    publisher: Yggdrasil.Publisher.Adapter.Memory
end

defmodule Yggdrasil.Adapter.NotAnAdapter do
  @moduledoc false
  # The subscriber module exists but has no start_link/2.
  use Yggdrasil.Adapter,
    name: :not_an_adapter,
    subscriber: Yggdrasil.Channel,
    publisher: Yggdrasil.Channel
end
