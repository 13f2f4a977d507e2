defmodule Yggdrasil.AdapterCase do
  @moduledoc false
  # Shared helpers of the adapter tests (test/adapter*_test.exs).
  use ExUnit.CaseTemplate

  import ExUnit.Assertions

  alias Yggdrasil.Channel

  using do
    quote do
      import Yggdrasil.AdapterCase

      # For messages that follow asynchronous work (adapter starts, stops,
      # restarts): generous, as the suites run concurrently.
      @wait 5_000

      alias Yggdrasil.Channel
      alias Yggdrasil.MemoryBroker
      alias Yggdrasil.Engine
      alias Yggdrasil.Subscriber.Generator
    end
  end

  setup_all do
    :ok = Yggdrasil.Adapter.Memory.register()
    :ok = Yggdrasil.Adapter.MemoryJson.register()
    :ok
  end

  # The Generator must never crash, whatever the adapters do.
  setup do
    generator = Process.whereis(Yggdrasil.Subscriber.Generator)

    on_exit(fn ->
      if Process.whereis(Yggdrasil.Subscriber.Generator) != generator,
        do: raise("Yggdrasil.Subscriber.Generator restarted during the test")
    end)
  end

  @doc "A complete `:memory` channel with a unique name."
  def channel!(fields \\ []) do
    name = {:memory_test, System.unique_integer([:positive])}

    {:ok, channel} =
      fields
      |> Keyword.put_new(:name, name)
      |> Keyword.put_new(:adapter, :memory)
      |> Yggdrasil.gen_channel()

    channel
  end

  def key(channel), do: Channel.key(channel)

  @doc """
  The running adapter process of `channel`. An adapter may report itself
  connected before the Generator has heard back from its start: wait for
  that (fails after ~5 s).
  """
  def adapter!(channel) do
    eventually(fn -> Yggdrasil.Subscriber.Generator.whereis(channel) end)
  end

  @doc "Polls `fun` until it returns a truthy value (fails after ~5 s)."
  def eventually(fun, tries \\ 500) do
    case fun.() do
      result when result in [nil, false] ->
        if tries == 0, do: flunk("condition never became true")
        Process.sleep(10)
        eventually(fun, tries - 1)

      result ->
        result
    end
  end

  @doc """
  A process that subscribes to `channel`, forwards every `:Y_*` message to
  `parent` as `{pid, message}`, and obeys `{:unsubscribe, channel}` (answers
  `{:unsubscribed, pid, result}`). Returns `{pid, subscribe_result}`.
  """
  def start_subscriber(channel, parent \\ self()) do
    pid =
      spawn(fn ->
        result = Yggdrasil.subscribe(channel)
        send(parent, {:subscribed, self(), result})
        forward(parent)
      end)

    receive do
      {:subscribed, ^pid, result} -> {pid, result}
    after
      5_000 -> flunk("subscriber #{inspect(pid)} did not subscribe")
    end
  end

  defp forward(parent) do
    receive do
      {:unsubscribe, channel} ->
        send(parent, {:unsubscribed, self(), Yggdrasil.unsubscribe(channel)})
        forward(parent)

      :stop ->
        :ok

      message when elem(message, 0) in [:Y_CONNECTED, :Y_DISCONNECTED, :Y_EVENT] ->
        send(parent, {self(), message})
        forward(parent)
    end
  end

  @doc "Unsubscribes a `start_subscriber/2` process."
  def unsubscribe_subscriber(pid, channel) do
    send(pid, {:unsubscribe, channel})

    receive do
      {:unsubscribed, ^pid, result} -> result
    after
      5_000 -> flunk("subscriber #{inspect(pid)} did not unsubscribe")
    end
  end

  @doc "Kills `pid` and waits until it is gone."
  def kill(pid) do
    ref = Process.monitor(pid)
    Process.exit(pid, :kill)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> :ok
    end
  end

  @doc "Waits for the `:DOWN` of `ref` and returns its reason."
  def down_reason(ref, timeout \\ 5_000) do
    receive do
      {:DOWN, ^ref, :process, _, reason} -> reason
    after
      timeout -> flunk("process did not stop")
    end
  end

  @doc """
  Publishes a sentinel and returns the `:Y_EVENT` payloads of `channel`
  received before it (messages from one adapter arrive in order).
  """
  def events_until_sentinel(channel) do
    sentinel =
      case channel.transformer do
        :json -> %{"sentinel" => System.unique_integer([:positive])}
        _ -> {:sentinel, make_ref()}
      end

    :ok = Yggdrasil.publish(channel, sentinel)
    collect(channel.name, sentinel, [])
  end

  defp collect(name, sentinel, acc) do
    receive do
      {:Y_EVENT, %Channel{name: ^name}, ^sentinel} -> Enum.reverse(acc)
      {:Y_EVENT, %Channel{name: ^name}, message} -> collect(name, sentinel, [message | acc])
    after
      5_000 -> flunk("sentinel not received; got so far: #{inspect(Enum.reverse(acc))}")
    end
  end
end
