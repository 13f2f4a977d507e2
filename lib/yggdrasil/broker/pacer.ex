defmodule Yggdrasil.Broker.Pacer do
  @moduledoc false
  # Keeps the broker delivery thread from running ahead of the subscribers
  # (`native/yggdrasil_nif/src/broker/pace.rs`): after each budget of sends
  # the thread names one recipient and the number of events it was sent
  # since the last pace, and waits until this process answers. It answers
  # once that recipient's mailbox holds no more than those events (or
  # `@few`): the recipient took what came before; and once each
  # `Yggdrasil.Broker.Sender` holds `@few` fan-outs at most. A recipient
  # that has not is looked at again every millisecond; the thread stops
  # waiting on its own after 200 ms.
  #
  # High priority: a pace is answered at once when the subscribers keep up,
  # not after every process the thread woke had its turn.
  use GenServer

  require Yggdrasil.Broker.Client

  alias Yggdrasil.Broker.Client

  # A mailbox this short is never behind.
  @few 8

  @doc false
  def start_link(_), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @impl GenServer
  def init(nil) do
    Process.flag(:priority, :high)
    :ok = Client.set_pacer(self())
    {:ok, %{pace: nil, timer: nil}}
  end

  @impl GenServer
  def handle_info({Client.tag(), :pace, seq, sample, window, senders}, state),
    do: {:noreply, check(%{state | pace: {seq, sample, window, senders}})}

  def handle_info(:check, state), do: {:noreply, check(%{state | timer: nil})}

  def handle_info(_other, state), do: {:noreply, state}

  defp check(%{pace: nil} = state), do: state

  defp check(%{pace: {seq, sample, window, senders}} = state) do
    if caught_up?(sample, window) and Enum.all?(senders, &caught_up?(&1, 0)) do
      Client.paced(seq)
      %{state | pace: nil}
    else
      %{state | timer: state.timer || Process.send_after(self(), :check, 1)}
    end
  end

  @doc false
  # True when `pid` holds no more than `window` messages (or `@few`), or
  # is gone: it took what it was sent before the last `window`.
  @spec caught_up?(pid(), non_neg_integer()) :: boolean()
  def caught_up?(pid, window) do
    case Process.info(pid, :message_queue_len) do
      {:message_queue_len, waiting} -> waiting <= max(window, @few)
      nil -> true
    end
  end

  @doc false
  # The same pacing for a channel process that fans out itself (channels
  # with a user transformer or backend): sleeps until `pid` caught up with
  # its last `window` events, at most `timeout` ms.
  @spec wait_for(pid(), non_neg_integer(), non_neg_integer()) :: :ok
  def wait_for(pid, window, timeout),
    do: wait_until(pid, window, System.monotonic_time(:millisecond) + timeout)

  defp wait_until(pid, window, deadline) do
    if caught_up?(pid, window) or System.monotonic_time(:millisecond) >= deadline do
      :ok
    else
      Process.sleep(1)
      wait_until(pid, window, deadline)
    end
  end
end
