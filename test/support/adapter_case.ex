defmodule Yggdrasil.AdapterCase do
  @moduledoc false
  # Shared helpers of the adapter tests (test/adapter*_test.exs).
  use ExUnit.CaseTemplate

  import ExUnit.Assertions
  import Yggdrasil.Test.Helpers

  alias Yggdrasil.Channel

  using do
    quote do
      import Yggdrasil.AdapterCase
      import Yggdrasil.Test.Helpers

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

  @doc "Waits for the `:DOWN` of `ref` and returns its reason."
  def down_reason(ref, timeout \\ 5_000) do
    receive do
      {:DOWN, ^ref, :process, _, reason} -> reason
    after
      timeout -> flunk("process did not stop")
    end
  end
end
