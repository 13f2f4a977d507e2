defmodule Yggdrasil.Test.Helpers do
  @moduledoc false
  # What the test files share: polling for asynchronous work, collecting a
  # channel's events, processes that only wait.

  import ExUnit.Assertions

  alias Yggdrasil.Channel

  @doc """
  Polls `fun` until it returns a truthy value, and returns it; fails with
  `what` after `timeout` ms. For work that finishes asynchronously
  (monitors, adapter starts, other nodes); it asserts no duration.
  """
  def eventually(fun, what \\ "condition", timeout \\ 10_000) do
    poll(fun, what, System.monotonic_time(:millisecond) + timeout)
  end

  defp poll(fun, what, deadline) do
    case fun.() do
      result when result in [nil, false] ->
        if System.monotonic_time(:millisecond) > deadline,
          do: flunk("timed out waiting for: #{what}")

        Process.sleep(5)
        poll(fun, what, deadline)

      result ->
        result
    end
  end

  @doc """
  Publishes a sentinel on `channel` and returns the `:Y_EVENT` payloads of
  `channel` received before it: one publisher's messages arrive in order,
  so this counts deliveries without sleeping.
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

  @doc """
  A process body that forwards every message it gets to `parent` as
  `{:forwarded, self(), message}`, for subscribers living in other processes.
  """
  def forward_all(parent) do
    receive do
      message ->
        send(parent, {:forwarded, self(), message})
        forward_all(parent)
    end
  end

  @doc "A process body that drops every message until `:stop`."
  def sink do
    receive do
      :stop -> :ok
      _ -> sink()
    end
  end

  @doc "Kills `pid` and waits until it is gone."
  def kill(pid) do
    ref = Process.monitor(pid)
    Process.exit(pid, :kill)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> :ok
    after
      5_000 -> flunk("#{inspect(pid)} did not die")
    end
  end
end
